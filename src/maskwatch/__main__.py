from maskwatch.cli import run

run()
