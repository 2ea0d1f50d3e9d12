"""Policy: the desiderata vocabulary, the decision point, disclosure profiles,
the audit log and the privacy guards."""
