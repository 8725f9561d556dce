"""Code the receiver, the workers and the reconciler share."""
