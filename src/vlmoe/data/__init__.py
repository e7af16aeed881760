"""vlmoe.data: offline datasets, file formats, tokenizers, transforms and collate functions.

Nothing here downloads anything. Every dataset is a torch ``Dataset`` of :class:`Sample`
(image, captions, questions/answers, label, boxes, referring expressions), so every task
(classification, VQA, captioning, retrieval, detection, grounding) runs on every dataset that has
the fields it needs.

- scene world: :class:`ShapesConfig`, :func:`generate_scene`, :func:`render`,
  :class:`ShapesDataset`, :func:`write_shapes`, :func:`cli_write`;
- real images in installed packages: :class:`MnistDataset`, :class:`DigitsDataset`,
  :class:`PhotosDataset`;
- users' files: :func:`load_image`, :class:`ImageFolderDataset`, :class:`ManifestDataset`,
  :class:`CocoDataset`, :func:`write_manifest`, :func:`write_coco`; errors are
  :class:`DataError`. Bad files follow ``on_error`` (:data:`OnError`: ``"raise"`` stops at the
  first one naming file and line, ``"skip"`` drops exactly the bad samples up front and counts
  each once in ``dataset.errors``) after the up-front check ``check`` (:data:`Check`:
  ``"header"`` by default, which also finds truncated PNG/JPEG/BMP/WebP files; ``"decode"``
  finds every undecodable image; ``"none"``); see :mod:`vlmoe.data.files`;
- text: :class:`Tokenizer`;
- batches: :class:`ImageTransform`, :func:`preprocess_image` (the one model-input
  pre-processing) and the shared collate pieces in :mod:`vlmoe.data.collate`.
"""

from vlmoe.data.coco import CocoDataset, write_coco
from vlmoe.data.collate import IGNORE_INDEX, stack_images
from vlmoe.data.errors import DataError, ErrorReport, OnError
from vlmoe.data.files import Check, FileDataset, ImageFolderDataset
from vlmoe.data.grammar import QUESTION_KINDS, answer_vocab, swap_left_right
from vlmoe.data.images import DEFAULT_MAX_PIXELS, load_image, pil_to_rgb, to_rgb_array
from vlmoe.data.manifest import ManifestDataset, write_manifest
from vlmoe.data.real import DigitsDataset, MnistDataset, PhotosDataset
from vlmoe.data.registry import DATASET_NAMES, load_dataset
from vlmoe.data.render import render
from vlmoe.data.sample import MODALITY_IMAGE, MODALITY_TEXT, QA, Box, RefExp, Sample, VLDataset
from vlmoe.data.shapes import (
    COLOURS,
    SHAPES,
    SPLITS,
    Scene,
    SceneObject,
    ShapesConfig,
    generate_scene,
)
from vlmoe.data.shapes_data import ShapesDataset, WriteReport, cli_write, make_sample, write_shapes
from vlmoe.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from vlmoe.data.transforms import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    ImageTransform,
    denormalize,
    hflip_sample,
    preprocess_image,
    to_tensor,
)

__all__ = [
    "COLOURS",
    "DATASET_NAMES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODALITY_IMAGE",
    "MODALITY_TEXT",
    "QA",
    "QUESTION_KINDS",
    "SHAPES",
    "SPECIAL_TOKENS",
    "SPLITS",
    "Box",
    "Check",
    "CocoDataset",
    "DataError",
    "DigitsDataset",
    "ErrorReport",
    "FileDataset",
    "ImageFolderDataset",
    "Augmentation",
    "ImageTransform",
    "ManifestDataset",
    "MnistDataset",
    "OnError",
    "PhotosDataset",
    "RefExp",
    "Sample",
    "Scene",
    "SceneObject",
    "ShapesConfig",
    "ShapesDataset",
    "Tokenizer",
    "VLDataset",
    "WriteReport",
    "answer_vocab",
    "cli_write",
    "denormalize",
    "generate_scene",
    "hflip_sample",
    "load_dataset",
    "load_image",
    "make_sample",
    "pil_to_rgb",
    "preprocess_image",
    "render",
    "stack_images",
    "swap_left_right",
    "to_rgb_array",
    "to_tensor",
    "write_coco",
    "write_manifest",
    "write_shapes",
]
