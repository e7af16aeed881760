"""Modality ids: every token carries one (DESIGN.md), image patches 0 and text tokens 1.

The one definition, used by the models (which tag their sequences), the MoE layer (modality
expert groups, per-modality losses and statistics), the data layer and the plots. Padding
positions are tagged -1 where a model needs to mark them.
"""

MODALITY_IMAGE = 0
MODALITY_TEXT = 1
MODALITY_NAMES = ("image", "text")  # index = modality id
