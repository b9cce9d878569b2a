"""Shared test setup. The real data and TensorFlow-written fixtures live in ../shared beside the
repository (the same layout in CI)."""

import random
import socket
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures"
VOCAB = DATA / "bert" / "vocab" / "uncased_vocab.txt"

torch.set_num_threads(2)


def free_port() -> int:
    """A local port nothing listens on, below the kernel's ephemeral range (32768 and up here) so
    that no outgoing connection takes it before the rendezvous binds it."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


@pytest.fixture(scope="session")
def google_zip() -> Path:
    return FIXTURES / "uncased_L-2_H-128_A-2.zip"


@pytest.fixture(scope="session")
def fixture_model(tmp_path_factory, google_zip) -> Path:
    """The fixture's Google checkpoint converted to a bertkit folder, once per session."""
    from bertkit.convert import convert

    return convert(google_zip, tmp_path_factory.mktemp("fixture") / "model")
