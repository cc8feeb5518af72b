from edgeops.cli import app

app()
