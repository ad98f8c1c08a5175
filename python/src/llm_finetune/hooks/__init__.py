"""Helm hooks: ``preflight`` (pre-install/pre-upgrade Job, initializer image) and ``verify`` (helm test Pod, trainer image)."""
