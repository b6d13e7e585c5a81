"""DECTRIS SIMPLON stream v1 / v2: pure decoders and codecs, the series state machine, a sim encoder."""
