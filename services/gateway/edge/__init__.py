"""The door: authentication, rate limits, the failed-auth throttle, admission control, text normalisation, log redaction."""
