"""Pure device-agnostic compute: the network, binning, tiling, normalisation, likelihood, quality.

Nothing here knows sockets or files; everything takes and returns torch tensors."""
