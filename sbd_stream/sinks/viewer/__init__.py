"""The live browser viewer: a consumer of the service's outputs, never a stage."""
