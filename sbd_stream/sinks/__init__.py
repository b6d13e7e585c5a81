"""Where results go: the ZeroMQ publisher, the HDF5 recorder, the live viewer."""
