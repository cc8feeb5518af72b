"""The six pipeline stages, each a plain function from input directories to an output directory and a record:
ingest -> train -> export -> benchmark -> verify -> promote. KFP components (`components/`) wrap them thinly.
"""
