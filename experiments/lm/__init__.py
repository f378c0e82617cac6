"""Language-model experiments on the package's sequence cores (Shakespeare or any text file).

Modules, in the order data meets them: ``data`` (corpus, split by play), ``tokenizers`` (characters,
byte-level BPE), ``dataset`` (token streams, windows, bits per character), ``simple_rnn`` (the
SimpleRNN family), ``model`` (embedding + core + head), ``train``, ``sample``, ``grid_search``.
The cores know nothing of text; this package imports them, never the reverse.
"""

import trajectory  # noqa: E402,F401  (before torch: keeps the repository's profile.py off the stdlib's path)
