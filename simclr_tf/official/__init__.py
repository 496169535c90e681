"""Reading the official SimCLR TF2 exports (the paper's released models).

:mod:`~simclr_tf.official.layout` reads an export and infers its
architecture; :mod:`~simclr_tf.official.mapping` places each official
variable in a simclr_tf model and checks parity. ``python -m
simclr_tf.convert`` drives both and writes a run directory.
"""
