import argparse
import sys

from .cli import add_arguments, serve

parser = argparse.ArgumentParser(
    prog="python -m django_cio.fakeserver",
    description="A fake Customer.io Track API for tests and load tests.",
)
add_arguments(parser)
serve(vars(parser.parse_args()), sys.stdout)
