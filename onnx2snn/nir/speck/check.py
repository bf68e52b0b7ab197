"""check_speck: the Speck report of an exported NIR graph."""
from __future__ import annotations

from ..export import load_nir
from .layers import (
    SpeckGraph,
    back_to_input,
    bias_of,
    find_destinations,
    find_sources,
    leads_to_output_only,
    new_layer,
    skip_fold,
    type_name,
    weight_of)
from . import limits
from .limits import CORES, THRESHOLD_LOW, sinabs_version
from .report import SpeckReport
from .rules import assign_cores, check_memory, check_rules, quantise_layer


def check_speck(graph, info: dict | None = None) -> SpeckReport:
    """The Speck report of to_nir's output (graph, info): Speck layers, their 8-bit quantisation,
    the layer rules and the memory, with per-layer reasons for what does not fit."""
    nir = load_nir()
    info = info or {}
    G = SpeckGraph(nir, graph)
    weights = G.weight_types()
    problems, notes, host = [], [], []
    layers, by_weight, by_neuron, folded_scales, refused = _weight_layers(G, nir, weights, problems)
    host_neurons, host_scales = _neurons_outside_layers(G, nir, weights, by_weight, by_neuron, info, graph, problems)
    _sources_destinations_and_the_rest(G, nir, weights, layers, by_weight, by_neuron, folded_scales, refused,
                                       host_neurons, host_scales, host, problems)
    memory_checked, memory_note = _rules_and_memory(G, layers, problems)
    input_info = _input_and_semantics(G, nir, graph, info, layers, host_neurons, notes, host)
    return _report(G, graph, layers, problems, notes, host, input_info, memory_checked, memory_note, folded_scales)


def _weight_layers(G, nir, weights, problems) -> tuple:
    """Speck layers: a weight node and the IF it feeds (and a skip Scale folded into the kernel)."""
    layers, by_weight, by_neuron, folded_scales, refused = [], {}, {}, {}, set()
    for name in G.order:
        node = G.node(name)
        if not isinstance(node, weights):
            continue
        succ = G.succs[name]
        if len(succ) != 1 or not G.is_(succ[0], nir.IF):
            what = ", ".join(f"{type_name(G.node(s))} '{s}'" for s in succ) or "nothing"
            problems.append(f"{type_name(node)} '{name}': feeds {what}, not one IF (a Speck layer is a weight layer "
                            "followed by its spiking neurons; sinabs connectivity_specs: weight -> neuron)")
            continue
        neuron = succ[0]
        if neuron in by_neuron:
            problems.append(f"{type_name(node)} '{name}': feeds IF '{neuron}', which layer {by_neuron[neuron].index} "
                            f"('{by_neuron[neuron].weight}') feeds too; a Speck core has one weight layer")
            continue
        others = [p for p in G.preds[neuron] if p != name]
        layer = new_layer(G, len(layers) + 1, name, neuron)
        fold = None
        if others:
            fold, why = skip_fold(G, name, neuron, others)
            if fold is None:
                layer.problems.append(why)               # the layer without the skip: quantised, not mappable
                refused.update(o for o in others if G.is_(o, nir.Scale))
            else:
                folded_scales[others[0]] = name
                layer.folded = [others[0]]
                layer.notes.append(fold["note"])
        layer._weight, layer._bias = fold["weight"] if fold else weight_of(G, name), bias_of(G, name)
        layers.append(layer)
        by_weight[name], by_neuron[neuron] = layer, layer

    return layers, by_weight, by_neuron, folded_scales, refused


def _neurons_outside_layers(G, nir, weights, by_weight, by_neuron, info, graph, problems) -> tuple:
    """IF nodes outside layers: fed by the input (current coding) or by no single weight layer."""
    host_neurons, host_scales = {}, set()
    for name in G.order:
        if G.is_(name, nir.IF) and name not in by_neuron:
            preds = G.preds[name]
            if any(p in by_weight or G.is_(p, *weights) for p in preds):
                continue                              # already reported with its weight layer
            behind = [back_to_input(G, p) for p in preds]
            if preds and all(b is not None for b in behind):
                via = sorted({s for b in behind for s in b[1]})
                host_scales.update(via)
                host_neurons[name] = behind[0][0]
                coding = info.get("input_coding", (graph.metadata or {}).get("input_coding", "?"))
                problems.append(
                    f"IF '{name}': integrates the graph input '{behind[0][0]}' "
                    + (f"(through {', '.join(repr(v) for v in via)}) " if via else "")
                    + f"without a weight layer (input_coding '{coding}': the layers before it run on the host); "
                    "a Speck core starts with a weight layer, so this IF must run on the host too and send its "
                    "spikes to the chip as events (or convert a model whose first layers the NIR export can "
                    "express: direct coding)")
            else:
                what = ", ".join(f"{type_name(G.node(p))} '{p}'" for p in preds)
                problems.append(f"IF '{name}': fed by {what}, not by one weight layer (a Speck core integrates "
                                "only its own convolution's output)")

    return host_neurons, host_scales


def _sources_destinations_and_the_rest(G, nir, weights, layers, by_weight, by_neuron, folded_scales, refused,
                                       host_neurons, host_scales, host, problems) -> None:
    """Sources (merges) and destinations (pooling) of each layer; readouts and other nodes."""
    for layer in layers:
        find_sources(G, layer, by_neuron, host_neurons)
        find_destinations(G, layer, by_weight, folded_scales, host)
    handled = set(by_weight) | set(by_neuron) | set(folded_scales) | host_scales | refused | \
        {p for L in layers for p in L.pools}
    for name in G.order:
        node = G.node(name)
        if name in handled or isinstance(node, (nir.Input, nir.Output, nir.Flatten, nir.IF) + weights):
            continue
        if isinstance(node, (nir.Scale, nir.SumPool2d)):
            if leads_to_output_only(G, name):
                continue                              # reported as host readout by find_destinations
            problems.append(f"{type_name(node)} '{name}': between layers where no Speck core can apply it "
                            + ("(a Scale of spikes: events carry no weight; fold it into the next layer's "
                               "weights in the ANN)" if isinstance(node, nir.Scale) else
                               "(Speck pools only the spikes of a layer on their way to the next one)"))
        else:
            problems.append(f"{type_name(node)} '{name}': no Speck counterpart (a core is convolution, "
                            "integrate-and-fire and sum pooling)")



def _rules_and_memory(G, layers, problems) -> tuple:
    """Layer rules, quantisation, cores and memory: (memory checked, how)."""
    for layer in layers:
        check_rules(G, layer)
        quantise_layer(G, layer)
    for layer in layers[len(CORES):]:
        layer.problems.append(f"layer {layer.index} ('{layer.weight}' + '{layer.neuron}'): Speck has "
                              f"{len(CORES)} cores and this graph needs {len(layers)} layers")
    validator = limits.load_validator()
    if validator is None:
        memory_checked, memory_note = False, "not checked: sinabs not installed"
        for layer in layers:
            layer.notes.append("memory not checked: sinabs not installed")
    else:
        memory_checked, memory_note = True, f"checked with sinabs {sinabs_version()} validate_memory_speck"
        for layer in layers:
            check_memory(validator, layer)
        assign_cores(layers, problems)

    return memory_checked, memory_note


def _input_and_semantics(G, nir, graph, info, layers, host_neurons, notes, host) -> dict:
    """How the input reaches the chip, and the time semantics the chip keeps only as rates."""
    inputs = [n for n in G.order if G.is_(n, nir.Input)]
    coding = info.get("input_coding", (graph.metadata or {}).get("input_coding", "direct"))
    entry = [L for L in layers if "input" in L.sources]
    shape = [int(d) for d in G.node(inputs[0]).output_type["output"]] if inputs else []
    if entry:
        firsts = ", ".join(f"'{L.weight}'" for L in entry)
        presentation = (
            f"Speck's input is events: '{inputs[0]}' {shape} is fed unchanged at every step ({coding} coding), "
            f"so on the chip each step must bring x[c,y,x] events at (c,y,x) to layer {firsts}: the input must be "
            "non-negative integer counts (an event camera, or a count-coded image; a float image needs its own "
            "scaling to counts, which the first layer's weights can absorb), else run the first layer on the host "
            "and send its spikes")
    else:
        fed = [L.weight for L in layers if any(str(s).startswith("host:") for s in L.sources)]
        presentation = (f"the graph input is not read by a Speck layer ({coding} coding): the host computes the "
                        f"first neurons ({', '.join(repr(n) for n in host_neurons) or 'none'}) at every step and "
                        f"sends their spikes as events to {', '.join(repr(n) for n in fed) or 'the chip'}")
    input_info = {"nodes": inputs, "shape": shape, "coding": coding, "presentation": presentation,
                  "first_layers": [L.weight for L in entry], "host_neurons": list(host_neurons)}
    notes.append("Speck is event-driven, not stepped: this graph's step semantics (every layer once per step, "
                 "at most one spike per neuron and step) hold on the chip only as rates; sinabs's model of the "
                 "chip (IAFSqueeze, MultiSpike) may emit several spikes per step")
    notes.append(f"the chip clips potentials at threshold_low = {THRESHOLD_LOW} (sinabs's default, min_v_mem=None); "
                 "the export's IF has no lower bound: not checked (needs the data)")
    if info.get("host"):
        before = [h["node"] for h in info["host"] if h.get("when") == "before"]
        after = [h["node"] for h in info["host"] if h.get("when") == "after"]
        if before:
            host.append(f"before the graph (host, once per sample): {', '.join(before)}")
        if after:
            host.append(f"after the readout (host): {', '.join(after)}")
    return input_info


def _report(G, graph, layers, problems, notes, host, input_info, memory_checked, memory_note,
            folded_scales) -> SpeckReport:
    """The report, problems deduplicated, with the quantised weights the export writes."""
    problems = list(dict.fromkeys(problems))
    for layer in layers:
        layer.problems = list(dict.fromkeys(layer.problems))
    report = SpeckReport(layers=layers, problems=problems, notes=notes, host=host, input=input_info,
                         memory_checked=memory_checked, memory_note=memory_note,
                         timesteps=(graph.metadata or {}).get("timesteps"))
    for layer in layers:
        report._quantised.update(layer.__dict__.pop("_q", {}))
        layer.__dict__.pop("_weight", None)
        layer.__dict__.pop("_bias", None)
    report._quantised["_folded"] = dict(folded_scales)
    # currents summed into a quantised IF by nodes outside its layer (a refused skip): scaled by the same
    # factor (not to integers) so that the quantised graph still computes what this report describes
    report._quantised["_rescale"] = {
        p: (L.scale, L.neuron) for L in layers if L.scale is not None
        for p in G.preds[L.neuron] if p != L.weight and p not in folded_scales}
    return report
