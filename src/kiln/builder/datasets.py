"""The data stage: calibration and validation sets from the options, with the pre-processing that images need
(given, or recorded for the model folder), the hold-out split and random inputs as the last resort."""

from __future__ import annotations

import dataclasses
from typing import Any

from kiln.builder.data import Dataset, InputSpec, is_image_folder, load_dataset, random_dataset
from kiln.builder.merge import ExistingModel
from kiln.builder.options import BuildOptions, Precision
from kiln.builder.profiles import ResolvedProfile
from kiln.errors import InvalidArgumentError


def with_recorded_preprocessing(options: BuildOptions, existing: ExistingModel, record: Any) -> BuildOptions:
    """``options`` with the pre-processing recorded for the model when images are given without one."""
    cal = options.calibration
    images = is_image_folder(cal.data) or is_image_folder(options.validation_data)
    if cal.preprocessing is None and images and existing.preprocessing is not None:
        record.details["preprocessing"] = (
            f"{existing.preprocessing.value} (from {existing.preprocessing_from})"
        )
        cal = dataclasses.replace(cal, preprocessing=existing.preprocessing)
        return dataclasses.replace(options, calibration=cal)
    if cal.preprocessing is not None and images:
        record.details["preprocessing"] = cal.preprocessing.value
    return options


def load_datasets(
    options: BuildOptions, inputs: list[InputSpec], profile: ResolvedProfile, record: Any
) -> tuple[Dataset, Dataset]:
    cal_opts = options.calibration
    calibration = Dataset([])
    validation: Dataset | None = None
    pre = cal_opts.preprocessing
    if cal_opts.data is not None:
        if options.validation_data is None:
            # the hold-out comes on top of the calibration samples, up to the gate's minimum
            extra = max(
                options.min_validation_samples, round(cal_opts.max_samples * cal_opts.holdout_fraction)
            )
            full = load_dataset(cal_opts.data, inputs, pre, cal_opts.max_samples + extra)
            calibration, validation = full.split(cal_opts.holdout_fraction, options.min_validation_samples)
            calibration = calibration.subset(0, cal_opts.max_samples)
        else:
            calibration = load_dataset(cal_opts.data, inputs, pre, cal_opts.max_samples)
    if options.validation_data is not None:
        validation = load_dataset(options.validation_data, inputs, pre, None, options.validation_labels)
    elif options.validation_labels is not None:
        raise InvalidArgumentError("--validation-labels needs --validation-data (the samples they label)")
    if options.precision is Precision.INT8 and len(calibration) == 0:
        raise InvalidArgumentError(
            "--precision int8 needs --calibration-data (a folder of .npy/.npz or images)"
        )
    if validation is None or len(validation) == 0:
        validation = random_dataset(inputs, profile.opt_shapes, options.validation_samples, options.seed)
        record.details["validation"] = f"{len(validation)} random samples (no validation data given)"
    else:
        labelled = " with labels" if validation.labels is not None else ""
        record.details["validation"] = f"{len(validation)} samples{labelled}"
    record.details["calibration"] = f"{len(calibration)} samples"
    return calibration, validation
