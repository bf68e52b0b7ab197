"""One conversion as a sequence of named steps over one context (`api.convert` runs it).

    context.py  the Context the steps share (files, memory budget, engine, data source, progress,
                the non-finite policy, each step's seconds) and the data source of the flags
    steps.py    the steps in order: load, freeze, calibrate, fit, build, write, nir, check
    result.py   Conversion, what a conversion returns
"""
