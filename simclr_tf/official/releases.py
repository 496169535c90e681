"""The SimCLR models the paper's authors released as TF2 SavedModels, by name.

``python -m simclr_tf.convert --official=NAME`` converts one of them;
``--official=list`` prints this table. The names are those of the bucket's
folders for SimCLR v2 (``r50_1x_sk0`` ... ``r152_3x_sk1``) and ``v1_r50_1x``,
``v1_r50_2x``, ``v1_r50_4x`` for SimCLR v1 (its folders are named by width
only). The top-1 figures are the papers' ImageNet linear-evaluation accuracies
as the official google-research/simclr README lists them (v2: Table 1 of
arXiv:2006.10029; v1: arXiv:2002.05709). Only the pretrained models (with
their linear-eval head) are named here; the fine-tuned, distilled and
supervised ones convert from their ``gs://`` path with ``--official_saved_model``.
"""

import dataclasses

from simclr_tf.errors import ConversionError

BUCKET = "gs://simclr-checkpoints-tf2"
SOURCE = "https://github.com/google-research/simclr#pre-trained-models-for-simclrv2"


@dataclasses.dataclass(frozen=True)
class Release:
    """One released pretrained model: where it is and what the paper reports for it."""

    name: str
    version: int  # SimCLR v1 or v2
    resnet_depth: int
    width_multiplier: int
    selective_kernels: bool
    linear_eval_top1: float  # ImageNet top-1 (%) of the paper's linear evaluation
    path: str  # the SavedModel directory (tf.io.gfile path)

    def describe(self):
        sk = ", selective kernels" if self.selective_kernels else ""
        return (f"SimCLR v{self.version} ResNet-{self.resnet_depth} "
                f"{self.width_multiplier}x{sk}")


def _v2(depth, width, sk, top1):
    name = f"r{depth}_{width}x_sk{int(sk)}"
    return Release(name, 2, depth, width, sk, top1,
                   f"{BUCKET}/simclrv2/pretrained/{name}/saved_model/")


def _v1(width, top1):
    return Release(f"v1_r50_{width}x", 1, 50, width, False, top1,
                   f"{BUCKET}/simclrv1/pretrain/{width}x/saved_model/")


RELEASES = {r.name: r for r in [
    _v1(1, 69.1), _v1(2, 74.2), _v1(4, 76.6),
    _v2(50, 1, False, 71.7), _v2(50, 1, True, 74.6),
    _v2(50, 2, False, 75.6), _v2(50, 2, True, 77.7),
    _v2(101, 1, False, 73.6), _v2(101, 1, True, 76.3),
    _v2(101, 2, False, 77.0), _v2(101, 2, True, 79.0),
    _v2(152, 1, False, 74.5), _v2(152, 1, True, 77.2),
    _v2(152, 2, False, 77.4), _v2(152, 2, True, 79.4),
    _v2(152, 3, True, 79.8),
]}


def resolve(name):
    """The :class:`Release` called ``name``; else a :class:`ConversionError` listing the names."""
    try:
        return RELEASES[name]
    except KeyError:
        raise ConversionError(
            f"--official={name!r} is not a released SimCLR model; the names are "
            f"{', '.join(RELEASES)} (--official=list shows them with their accuracy).") from None


def table():
    """The released models, one line each, with the paper's linear-eval top-1."""
    lines = [f"{'name':12s} {'ImageNet linear-eval top-1':>27s}  model",
             *(f"{r.name:12s} {r.linear_eval_top1:26.1f}%  {r.describe()}"
               for r in RELEASES.values()),
             f"(top-1: the papers' figures as listed in {SOURCE}; "
             f"the SavedModels are under {BUCKET}/)"]
    return "\n".join(lines)


def local_name(path):
    """The folder a by-hand download of ``path`` goes into (the release's name where known)."""
    stripped = path.rstrip("/")
    for release in RELEASES.values():
        if release.path.rstrip("/") == stripped:
            return release.name
    parts = [p for p in stripped.split("/") if p]
    if len(parts) > 1 and parts[-1] == "saved_model":
        return parts[-2]
    return "official_model"


def download_hint(path):
    """How to fetch the SavedModel at ``path`` by hand and convert the local copy."""
    stripped = path.rstrip("/")
    local = local_name(path)
    copy = f"{local}/{stripped.rsplit('/', 1)[-1]}"
    how = f"mkdir -p {local} && gsutil -m cp -r {stripped} {local}/"
    if stripped.startswith("gs://"):
        https = "https://storage.googleapis.com/" + stripped[len("gs://"):]
        how += (f" (or gcloud storage cp -r; each file is also at {https}/<file>: "
                "saved_model.pb and variables/*)")
    return f"{how}, then pass --official_saved_model={copy}"
