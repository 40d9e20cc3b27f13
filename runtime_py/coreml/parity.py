"""The `coreml` section of the parity report: what Linux can prove about a Core ML bundle.

python -m runtime_py.coreml.parity --bundle DIR [--checkpoint CKPT] [--json]

1. bundle: the shared validator (runtime_py.bundle.Bundle.open: header, sizes, sha256).
2. structure: packages vs manifest (functions, I/O, states, opset, iOS18 op set, fp32 islands, how
   weights are stored) - runtime_py.coreml.checks.check_structure.
3. contract: the manifest's methods are the reference model's export contract.
4. weights: every stored parameter is exactly the int4/int8/fp16 image of the fp32 parameter.
5. sim_*: runtime_py.parity (golden, teacher-forced, components, end to end) with CoreMLSimBackend,
   i.e. fp16 PyTorch carrying the weights read back out of the packages, against fp32 eager.
6. device: the packages themselves through the same parity run; macOS 15+ only, otherwise SKIPPED
   with the reason (never counted as passed).

Measured on the default model (CoreMLSimBackend vs fp32 eager over runtime_py.parity's runs; token
agreement is token-weighted over all scales; thresholds: export/coreml/manifest.py):

  AR / text    golden tok  SQNR   teacher-forced tok  SQNR   text SQNR  VAE PSNR  e2e tok  e2e PSNR
  fp16 / fp16  0.993       22.7   0.999               34.1   58.5       64.2      0.968    24.5
  int8 / int8  0.975       15.5   0.977               13.2   37.5       64.2      0.714    13.7
  int4 / int8  0.677        2.1   0.696                2.4   37.5       64.2      0.369    10.8
  (eager with another seed, i.e. an unrelated sample: e2e tok 0.02, PSNR 9.5 dB)

Int4 on this random-weight model flips many sampled tokens even with identical inputs: its logits
are flat over the top-600 candidates, so Gumbel-max picks among near-ties, and every single int4
matrix alone already drops teacher-forced agreement to about 0.8 (fp16 compute alone keeps >= 0.99).
End to end, one flipped token changes the next scale's input, so errors compound. The sharp gate
for int4 is therefore the weights check (every code within half a step, every scale = absmax/7).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime_py.backends.coreml import CoreMLSimBackend, device_unavailable_reason
from runtime_py.bundle import REQUIRED, Bundle, BundleError
from runtime_py.cli import OneLineParser, UserError, cli_main
from runtime_py.coreml.checks import Check, check_structure, check_weights
from runtime_py.manifest_schema import manifest_problem

PARITY_KEYS = ("golden", "teacher_forced", "components", "end_to_end")


def _from_report(prefix: str, report: dict) -> list[Check]:
    out = []
    for k in PARITY_KEYS:
        r = report[k]
        c = Check(f"{prefix}_{k}", "PASS" if r["passed"] else "FAIL", list(r["failures"]),
                  {"values": r["values"], "thresholds": r["thresholds"]})
        if k == "end_to_end":
            c.info["per_run"] = [{key: row[key] for key in ("prompt", "seed", "image_psnr_db", "token_agreement")}
                                 for row in r["rows"]]
        out.append(c)
    return out


def _failed(name: str, err: Exception) -> Check:
    c = Check(name)
    c.fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    return c


def coreml_section(bundle_dir: Path, checkpoint: Path | None = None, text_encoder: Path | None = None,
                   device: bool = True) -> dict:
    """All Core ML checks of one bundle -> {"backend", "bundle", "status", "checks"}; status FAIL if any fails."""
    from runtime_py.parity import contract_check, reference_model, run_parity

    root = Path(bundle_dir)
    checks: list[Check] = []
    try:
        bundle = Bundle.open(root)
        checks.append(Check("bundle"))
    except BundleError as e:
        checks.append(_failed("bundle", e))
        try:  # keep going past changed files: report every problem, not the first ...
            manifest = json.loads((root / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = None
        if manifest_problem(manifest, REQUIRED):  # ... unless the manifest itself is unusable
            return _section(root, checks)
        bundle = Bundle(root, manifest)
    manifest = bundle.manifest
    checks.append(check_structure(root, manifest))
    try:
        reference = reference_model(bundle, checkpoint, text_encoder)
        contract_check(bundle, reference)
        checks.append(Check("contract"))
    except (UserError, ValueError) as e:
        checks.append(_failed("contract", e))
        return _section(root, checks)
    wchk, stored = check_weights(root, manifest, reference)
    checks.append(wchk)
    if stored:
        sim = CoreMLSimBackend(reference, stored, bundle.specs)
        try:
            checks += _from_report("sim", run_parity(root, checkpoint, backend=sim, text_encoder=text_encoder))
        except (UserError, ValueError) as e:
            checks.append(_failed("sim_parity", e))
    reason = device_unavailable_reason() if device else "not requested"
    if reason:
        checks.append(Check("device", "SKIPPED", info={"reason": reason}))
    else:
        try:
            checks += _from_report("device", run_parity(root, checkpoint, text_encoder=text_encoder))
        except Exception as e:  # noqa: BLE001 - a device failure of any kind is a FAIL with its message
            checks.append(_failed("device", e))
    return _section(root, checks)


def _section(root: Path, checks: list[Check]) -> dict:
    status = "FAIL" if any(c.status == "FAIL" for c in checks) else "PASS"
    return {"backend": "coreml", "bundle": str(root), "status": status,
            "checks": [{"name": c.name, "status": c.status, "errors": c.errors, "info": c.info} for c in checks]}


def print_section(sec: dict) -> None:
    print(f"coreml {sec['bundle']}: {sec['status']}")
    for c in sec["checks"]:
        print(f"  {c['name']:<20}{c['status']:<8}{json.dumps(c['info'])}")
        for e in c["errors"][:20]:
            print(f"      - {e}")


@cli_main("python -m runtime_py.coreml.parity")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m runtime_py.coreml.parity",
                      description="Check a Core ML bundle on any OS (exit 1 if a check fails).")
    p.add_argument("--bundle", type=Path, required=True, help="Core ML bundle folder (manifest.json)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint the bundle was exported from (if not default-seeded)")
    p.add_argument("--json", action="store_true", help="print the section as JSON")
    a: argparse.Namespace = p.parse_args(argv)
    mf = a.bundle / "manifest.json"
    if not mf.is_file():
        p.error(f"--bundle {a.bundle} has no manifest.json (export one with python -m export.coreml)")
    from runtime_py.parity import _manifest_backend

    if _manifest_backend(a.bundle) != "coreml":
        p.error(f"--bundle {a.bundle} is not a Core ML bundle (manifest.json backend)")
    sec = coreml_section(a.bundle, a.checkpoint)
    if a.json:
        print(json.dumps(sec, indent=2))
    else:
        print_section(sec)
    return 0 if sec["status"] == "PASS" else 1



if __name__ == "__main__":
    sys.exit(main())
