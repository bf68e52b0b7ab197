"""The ANN as a graph: ONNX in and out (onnx_io), the one analysis of a model (analyse), small
node builders (builder) and operation counts for the energy estimate (costs)."""
