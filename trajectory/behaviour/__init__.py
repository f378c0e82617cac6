"""The behaviour policies behind the local reproductions of D4RL's medium datasets.

    config.py         SACConfig (torch-free: the command line is checked before torch loads)
    reproductions.py  which datasets are reproduced, with which committed policy (policies/)
    policy.py         the SAC actor: save, load, evaluate
    sac.py            the SAC population and its training loop
    train.py          python -m trajectory.behaviour.train   (train a population of SAC agents)
    card.py           python -m trajectory.behaviour.card    (install a snapshot with its card)
    generate.py       python -m trajectory.behaviour.generate (roll a policy into a Minari dataset)

Imports point one way (train -> sac -> policy; card, generate -> policy, reproductions) and never
into :mod:`trajectory.data`, which imports the generator to build a reproduction on first use.
"""
