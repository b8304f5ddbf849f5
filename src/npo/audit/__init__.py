"""`npo audit` / `npo verify`: a verifiable record of one deletion request (docs/audit.md).

`run_audit(request, before, after, out, ...)` writes the audit directory; `verify_audit(dir)` checks
it; `write_request(path, id=..., data=..., forget_split=...)` writes a request file. On the testbed:

    req = write_request(run / "request.json", id="npo_rt", data=data_dir, forget_split="forget10")
    run_audit(req, target_model, run / "model", run / "audit", retain_model=retain_model, settings=TESTBED)
 Submodules: manifest (hashes), request, collect (the model side), bootstrap, analysis, verdicts,
report, chain (the audit's own hash and the chain between audits), verify.
"""

from npo.audit.request import write_request
from npo.audit.settings import PROBES, TESTBED, AuditSettings


def run_audit(*args, **kwargs):
    from npo.audit.run import run_audit as run

    return run(*args, **kwargs)


def verify_audit(*args, **kwargs):
    from npo.audit.verify import verify_audit as verify

    return verify(*args, **kwargs)


__all__ = ["PROBES", "TESTBED", "AuditSettings", "run_audit", "verify_audit", "write_request"]
