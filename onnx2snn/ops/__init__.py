"""The neuron's contract: the operator domain and the NumPy IF neuron (neuron), and the pure-NumPy
simulation of a converted SNN (reference) that every graph form and the C++ operators are held to."""
