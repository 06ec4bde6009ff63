"""Pure functions from MedAIFlow domain objects to FHIR R4 resources; empty until the FHIR issue lands."""
