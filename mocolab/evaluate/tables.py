"""results.json laid out like the reference page, beside the numbers published for the model evaluated.

One function per benchmark (its row in evaluate.suite.BENCHMARKS names it); suite.tables joins them.

For a published checkpoint (mocolab.weights.registry, or `published=` in
EvalConfig) every table shows the numbers its page publishes for that very
file, mocolab's measurement and the difference. For a mocolab run it shows
the MoCo v2 reference page's numbers where the data is the reference's
(ImageNet for kNN and the probes, VOC07 for the SVMs). Each table first says
what it was measured on: a subset, another dataset or another image size is
stated, never implied to be the published setting.
"""

from __future__ import annotations

import json

from ..reference import EVALUATION

REFERENCE_PAGE = "the MoCo v2 reference page (MMSelfSup, 200 epochs)"


# ----------------------------------------------------------------------------
# What is compared with what
# ----------------------------------------------------------------------------


def _reference(results: dict, benchmark: str, same_data: bool) -> tuple[str, dict] | None:
    """(column label, numbers) for one benchmark, or None when there is nothing to put beside it."""
    published = results.get("published")
    if published:  # a published checkpoint: its own numbers, whatever the data (the caption says which)
        numbers = published["numbers"].get(benchmark)
        return (f"published ({published['name']})", numbers) if numbers else None
    if same_data and benchmark in EVALUATION:  # a mocolab run: the reference page's, on the reference's data
        return "reference", json.loads(json.dumps(EVALUATION[benchmark]))  # keys as in results.json: text
    return None


def _full(results: dict) -> bool:
    config = results.get("config", {})
    return not config.get("train_size") and not config.get("test_size")


def _at_224(results: dict) -> bool:
    return results.get("image_size", 224) == 224


def _imagenet(results: dict) -> bool:
    return results.get("dataset") == "imagefolder" and "imagenet" in results.get("data_root", "").lower()


def _voc(results: dict) -> bool:
    return results.get("svm_data") == "voc07"


VOC_SETTING = "VOC07 trainval / test at 224 px"
IMAGENET_SETTING = "all of ImageNet-1k, 224 px"


def _caption(results: dict, data: str, same_setting: bool, reference, setting: str) -> list[str]:
    """One line on the data measured, and whether it is the setting of the numbers beside it."""
    size = results.get("image_size")
    measured = f"{data}{f', {size} px' if size else ''}"
    if reference and not same_setting:
        published = results.get("published")
        whose = (
            f"{published['name']}'s numbers: pretrained on {published['pretrained_on']}, evaluated on "
            if published
            else "the reference's: "
        )
        return [
            f"*Measured on {measured}; not the setting of {whose}{setting}. The difference shows how far "
            f"this setting is from it, not whether the number is reproduced.*",
            "",
        ]
    return [f"*Measured on {measured}.*", ""]


def _split_data(results: dict) -> str:
    subset = "" if _full(results) else ", seeded subsets"
    return (
        f"{results.get('dataset')} at {results.get('data_root')} ({results.get('train_size', 0):,} training, "
        f"{results.get('test_size', 0):,} test images{subset})"
    )


def _svm_data(results: dict, sizes: dict) -> str:
    name = "VOC07" if results.get("svm_data") == "voc07" else results.get("svm_data")
    return f"{name} ({sizes.get('train', 0):,} training, {sizes.get('test', 0):,} test images)"


def _cells(measured: float, reference, key) -> list[str]:
    """[published, difference] cells for one measurement ("" where nothing is published for it)."""
    if reference is None:
        return []
    number = reference[1].get(str(key))
    if number is None:
        return ["", ""]
    return [f"{number:.2f}", f"{measured - number:+.2f}"]


def _header(first: str, measured: str, reference) -> list[str]:
    columns = [first, measured] + ([reference[0], "difference"] if reference else [])
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


# ----------------------------------------------------------------------------
# The tables
# ----------------------------------------------------------------------------


def svm_table(results: dict) -> list[str]:
    svm, same = results["svm"], _voc(results) and _at_224(results)
    reference = _reference(results, "svm_voc07", _voc(results))
    name = "VOC07" if results.get("svm_data") == "voc07" else results["svm_data"]
    lines = [f"**Linear SVM per layer ({name} mAP)**", ""]
    lines += _caption(results, _svm_data(results, svm.get("data", {})), same, reference, VOC_SETTING)
    lines += _header("layer", "mAP", reference)
    for layer, r in svm["layers"].items():
        lines.append("| " + " | ".join([layer, f"{r['mAP']:.2f}", *_cells(r["mAP"], reference, layer)]) + " |")
    return lines + [""]


def lowshot_table(results: dict) -> list[str]:
    low, same = results["lowshot"], _voc(results) and _at_224(results)
    reference = _reference(results, "lowshot_voc07", _voc(results))
    ks = list(low["by_k"])
    lines = [f"**Low-shot linear SVM ({low['layer']}), mAP mean over samples**", ""]
    lines += _caption(results, _svm_data(results, results.get("svm", {}).get("data", {})), same, reference, VOC_SETTING)
    lines += ["| cost picked | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for how, label in (("cost_picked_on_test", "on test (reference)"), ("cost_picked_by_cv", "by CV in sample")):
        row = [f"{low['by_k'][k][how]['mean']:.2f}" if how in low["by_k"][k] else "n/a" for k in ks]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    if reference:
        numbers = reference[1]
        lines.append(f"| {reference[0]} | " + " | ".join(_number(numbers.get(str(k))) for k in ks) + " |")
        measured = [low["by_k"][k]["cost_picked_on_test"]["mean"] for k in ks]
        lines.append(
            "| difference (on test) | "
            + " | ".join(f"{m - numbers[str(k)]:+.2f}" if str(k) in numbers else "" for m, k in zip(measured, ks))
            + " |"
        )
    return lines + [""]


def linear_table(results: dict) -> list[str]:
    same = _imagenet(results) and _full(results) and _at_224(results)
    reference = _reference(results, "linear_imagenet", _imagenet(results))
    lines = ["**Linear classification top-1**", ""]
    lines += _caption(results, _split_data(results), same, reference, IMAGENET_SETTING)
    lines += _header("head", "top-1", reference)
    for protocol, r in results["linear"]["protocols"].items():
        for name, top1 in r["top1"].items():
            lines.append(
                "| " + " | ".join([f"{protocol}: {name}", f"{top1:.2f}", *_cells(top1, reference, name)]) + " |"
            )
    return lines + [""]


def knn_table(results: dict) -> list[str]:
    same = _imagenet(results) and _full(results) and _at_224(results)
    reference = _reference(results, "knn_imagenet", _imagenet(results))
    lines = [f"**kNN top-1 (T = {results['knn']['settings']['T']})**", ""]
    lines += _caption(results, _split_data(results), same, reference, IMAGENET_SETTING)
    for feature, by_k in results["knn"]["features"].items():
        ks = list(by_k)
        lines += [
            f"| {feature} | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---" * (len(ks) + 1) + "|",
            "| measured | " + " | ".join(f"{by_k[k]['top1']:.2f}" for k in ks) + " |",
        ]
        if reference and feature == "avgpool":
            numbers = reference[1]
            lines.append(f"| {reference[0]} | " + " | ".join(_number(numbers.get(str(k))) for k in ks) + " |")
            lines.append(
                "| difference | "
                + " | ".join(f"{by_k[k]['top1'] - numbers[str(k)]:+.2f}" if str(k) in numbers else "" for k in ks)
                + " |"
            )
        lines.append("")
    return lines


def _number(value) -> str:
    return "" if value is None else f"{value:.2f}"


def rankme_table(results: dict) -> list[str]:
    r = results["rankme"]
    lines = ["**RankMe (effective rank of the avgpool features, label-free)**", ""]
    lines += _caption(results, _split_data(results), False, None, IMAGENET_SETTING)
    lines += [
        "| features | images | dims | RankMe | at most |",
        "|---|---|---|---|---|",
        f"| {r['settings']['layer']} of the training images | {r['data']['images']:,} | {r['data']['dims']:,} | "
        f"{r['rankme']:.1f} | {min(r['data']['images'], r['data']['dims']):,} |",
    ]
    return lines + [""]
