"""Webhooks: a job's callback URL, checked at submit, POSTed the job's JSON (signed) when the job ends."""
