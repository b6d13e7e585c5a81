"""What both sides read and write: the recording layout (HDF5 / NeXus) and the DECTRIS codec.

Sources (replay, emulator, DECTRIS decoders) and sinks (recorder, export) meet here, so neither
imports the other.
"""
