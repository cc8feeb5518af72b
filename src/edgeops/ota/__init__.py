"""Over-the-air releases: what a release is (`release`, all a device imports), the signing keys (`keys`)
and the TUF publisher that writes releases to the OTA bucket (`publisher`)."""
