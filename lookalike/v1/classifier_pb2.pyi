from lookalike.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "top_k", "crop")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    top_k: int
    crop: _types_pb2.CropBox
    def __init__(self, image: _Optional[bytes] = ..., top_k: _Optional[int] = ..., crop: _Optional[_Union[_types_pb2.CropBox, _Mapping]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("predictions", "cache_hit", "classifier_version")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    cache_hit: bool
    classifier_version: str
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., cache_hit: _Optional[bool] = ..., classifier_version: _Optional[str] = ...) -> None: ...

class TrainClassifierRequest(_message.Message):
    __slots__ = ("label_field", "holdout_fraction", "c_values", "min_examples_per_label")
    LABEL_FIELD_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    C_VALUES_FIELD_NUMBER: _ClassVar[int]
    MIN_EXAMPLES_PER_LABEL_FIELD_NUMBER: _ClassVar[int]
    label_field: str
    holdout_fraction: float
    c_values: _containers.RepeatedScalarFieldContainer[float]
    min_examples_per_label: int
    def __init__(self, label_field: _Optional[str] = ..., holdout_fraction: _Optional[float] = ..., c_values: _Optional[_Iterable[float]] = ..., min_examples_per_label: _Optional[int] = ...) -> None: ...

class ClassMetrics(_message.Message):
    __slots__ = ("label", "precision", "recall", "support", "train_examples")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    label: str
    precision: float
    recall: float
    support: int
    train_examples: int
    def __init__(self, label: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., support: _Optional[int] = ..., train_examples: _Optional[int] = ...) -> None: ...

class TrainClassifierResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: ClassifierReport
    def __init__(self, report: _Optional[_Union[ClassifierReport, _Mapping]] = ...) -> None: ...

class ClassifierReport(_message.Message):
    __slots__ = ("version", "model_id", "label_field", "labels", "train_size", "test_size", "accuracy", "cv_accuracy", "c", "per_class", "seconds", "created_at", "skipped_labels", "unlabeled", "confusion")
    class SkippedLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEST_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CV_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_LABELS_FIELD_NUMBER: _ClassVar[int]
    UNLABELED_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    model_id: str
    label_field: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    train_size: int
    test_size: int
    accuracy: float
    cv_accuracy: float
    c: float
    per_class: _containers.RepeatedCompositeFieldContainer[ClassMetrics]
    seconds: float
    created_at: str
    skipped_labels: _containers.ScalarMap[str, int]
    unlabeled: int
    confusion: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[str] = ..., model_id: _Optional[str] = ..., label_field: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., train_size: _Optional[int] = ..., test_size: _Optional[int] = ..., accuracy: _Optional[float] = ..., cv_accuracy: _Optional[float] = ..., c: _Optional[float] = ..., per_class: _Optional[_Iterable[_Union[ClassMetrics, _Mapping]]] = ..., seconds: _Optional[float] = ..., created_at: _Optional[str] = ..., skipped_labels: _Optional[_Mapping[str, int]] = ..., unlabeled: _Optional[int] = ..., confusion: _Optional[_Iterable[int]] = ...) -> None: ...

class GetClassifierRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClassifierResponse(_message.Message):
    __slots__ = ("classifier",)
    CLASSIFIER_FIELD_NUMBER: _ClassVar[int]
    classifier: ClassifierReport
    def __init__(self, classifier: _Optional[_Union[ClassifierReport, _Mapping]] = ...) -> None: ...

class StartClassifierTrainingRequest(_message.Message):
    __slots__ = ("training",)
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    training: TrainClassifierRequest
    def __init__(self, training: _Optional[_Union[TrainClassifierRequest, _Mapping]] = ...) -> None: ...

class StartClassifierTrainingResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_types_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class GetClassifierTrainingRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetClassifierTrainingResponse(_message.Message):
    __slots__ = ("job", "report")
    JOB_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.JobStatus
    report: ClassifierReport
    def __init__(self, job: _Optional[_Union[_types_pb2.JobStatus, _Mapping]] = ..., report: _Optional[_Union[ClassifierReport, _Mapping]] = ...) -> None: ...
