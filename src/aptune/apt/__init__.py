"""APT, adaptive pruning and tuning (Zhao, Hajishirzi and Cao, ICML 2024), as one package.

    config.py    APTConfig: the hyperparameters (torch-free)
    masks.py     head, neuron and hidden-dimension masks, acting through aptune.hooks
    salience.py  outlier-aware activation x gradient salience with an EMA (Eqs. 4-5)
    budget.py    the size C (Eq. 6), block costs and the keep-set search
    schedule.py  pruning points, the cubic kept-ratio schedule, μ and the LR segments
    pruner.py    adaptive pruning A_P: mask steps, pruning points, compaction, optimizer survivors
    ranks.py     adaptive tuning A_T: adapter sites, their importance and rank growth
    teacher.py   self-distillation D_S: the teacher's life cycle, Tr and the losses (Eqs. 7-8)
    callback.py  the composition: the training loop's events, in the order of
                 docs/method.md#step-order
docs/method.md explains each part; the registry entry is aptune.methods.apt.
"""
