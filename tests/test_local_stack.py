"""What a local stack leaves behind (conformance/stack.py): a run starts dozens, and one that holds a
fetched model is about 95 MB, so a root the stack made is its own to remove."""

from __future__ import annotations

from conformance.stack import LocalStack


def test_a_stack_removes_the_root_it_made(tmp_path):
    stack = LocalStack(tmp_path)
    stack.path("/var/lib/slm-copilot-models/model.gguf").parent.mkdir(parents=True)
    stack.stop()
    assert not stack.root.exists()


def test_a_root_given_to_a_stack_stays(tmp_path):
    stack = LocalStack(tmp_path, root=tmp_path / "root")
    stack.stop()
    assert stack.root.exists()
