"""The SLM-Copilot conformance suite: the appliance's contract, checked against a target."""
