"""The services edgeops talks to, and how: the local S3 + MLflow supervisor (`supervisor`), S3 access (`s3`),
MLflow access (`tracking`) and recording sessions in the raw bucket (`sessions`)."""
