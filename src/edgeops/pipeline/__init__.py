"""Running the compiled pipeline: its parameters (`arguments`), KFP's local runner (`local`), a Kubeflow
cluster (`cluster`), what each component records about itself (`task`), and `make demo` (`demo`)."""
