"""``python -m training.samples DATA [OUT]``: regenerate the quality-frame bundle (``training.sim.samples``).

Kept at this path because the docs and tests name this command; the code lives with the simulation
stage it belongs to.
"""

from __future__ import annotations

if __name__ == "__main__":
    from training.sim.samples import main

    main()
