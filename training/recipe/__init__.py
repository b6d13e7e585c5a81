"""`sbd-train gpu-recipe`: simulate, train, export, build the TensorRT plan and evaluate, in one call.

Every step calls the project's own functions (``training.sim.simulate``, ``training.train.loop``,
``training.train.export``, ``training.evaluate.detector``); nothing here re-implements them. What a step
needs that the machine lacks (a GPU for training, TensorRT for the plan) is checked first: training
refuses to fall back to the CPU unless asked (``allow_cpu``, for smoke runs), and the TensorRT step is
recorded as *skipped* with the reason when TensorRT or CUDA is missing, never faked. Each step's
status, time and outputs go into ``<results>/gpu_recipe.json`` as soon as it ends.

Several GPUs: training runs under ``torchrun --standalone --nproc_per_node=<gpus> -m training.recipe
train-worker <config.json>`` (one process per GPU, DistributedDataParallel, as ``sbd-train train``
under torchrun); one GPU trains in this process.

Stage 4 of ``training``: above ``sim``, ``evaluate`` and ``train``, whose functions it calls. Modules:
``config`` (the options, what the machine has), ``parts`` (what each step is made of: the world, the
training config, the torchrun command), ``steps`` (the five steps), ``plan`` (what a run would do,
writing nothing), ``run`` (running the steps, the summary) and ``__main__`` (one torchrun rank).
"""
