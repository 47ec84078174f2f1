"""Class vocabularies (built-in COCO / LVIS / ImageNet lists, user lists) and prompt templates."""

from ovsam.vocab.loading import load_vocabulary, parse_vocabulary_argument, vocabulary_from_file
from ovsam.vocab.vocabulary import (
    BUILTIN_VOCABULARIES,
    Vocabulary,
    builtin_vocabulary,
    category_vocabulary,
    comma_synonyms,
    lvis_frequencies_from_annotations,
    lvis_vocabulary_from_annotations,
    name_key,
    prompt_templates,
    split_synonyms,
    vocabulary_from_names,
)

__all__ = [
    "BUILTIN_VOCABULARIES",
    "Vocabulary",
    "builtin_vocabulary",
    "category_vocabulary",
    "comma_synonyms",
    "load_vocabulary",
    "lvis_frequencies_from_annotations",
    "lvis_vocabulary_from_annotations",
    "name_key",
    "parse_vocabulary_argument",
    "prompt_templates",
    "split_synonyms",
    "vocabulary_from_file",
    "vocabulary_from_names",
]
