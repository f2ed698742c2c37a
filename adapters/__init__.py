"""Channel adapters: one package per config ``type``, all behind :mod:`adapters.base`."""
