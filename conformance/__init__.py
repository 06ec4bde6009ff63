"""The conformance suite and conformance statements; empty until the conformance issue lands."""
