"""The conformance suite (`medaiflow conformance`): DICOMweb and FHIR R4 cases
that run against any server, and the conformance statements. It knows
nothing of MedAIFlow's internals."""
