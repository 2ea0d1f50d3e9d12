"""Policy: the desiderata vocabulary, the decision point, disclosure profiles, audit log and privacy guards."""
