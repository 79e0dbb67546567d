"""The procedural photo world: scene graphs, rendering, captions, queries and sample libraries.

Pure Python, NumPy and Pillow (no torch), so data loaders, tests and the demo can use it anywhere.

    scene = scene_for_seed(7)                      # or sample_scene(rng), scenes(split_seed, n)
    image = render_scene(scene, 160, 120)          # any size; same scene -> same pixels
    texts = captions_for(scene, rng, 5)            # "two blue stars above a green tree in the snow"
    parse_caption(texts[0])                        # -> SceneDescription, consistent with the scene
    parse_query("a red car").matches(scene)        # ground truth for retrieval metrics
"""

from coca.world.captions import captions_for, description_of, group_relations, write_caption
from coca.world.facts import SceneFacts, description_facts, scene_facts
from coca.world.language import ObjectTerm, RelationTerm, SceneDescription, vocabulary
from coca.world.library import MANIFEST_NAME, LibraryEntry, read_manifest, write_library
from coca.world.parse import parse_caption, parse_description
from coca.world.queries import (
    CATEGORIES,
    HELDOUT_SEED,
    TRAIN_SEED,
    Query,
    QueryError,
    description_matches,
    eval_queries,
    parse_query,
)
from coca.world.render import PALETTE, render_scene
from coca.world.scene import (
    BACKGROUNDS,
    COLORS,
    KINDS,
    RELATIONS,
    SIZES,
    Lighting,
    Relation,
    Scene,
    SceneObject,
    item_seed,
    iter_scenes,
    relations_between,
    sample_scene,
    scene_for_seed,
    scenes,
)

__all__ = [
    "BACKGROUNDS",
    "CATEGORIES",
    "COLORS",
    "HELDOUT_SEED",
    "KINDS",
    "MANIFEST_NAME",
    "PALETTE",
    "RELATIONS",
    "SIZES",
    "TRAIN_SEED",
    "LibraryEntry",
    "Lighting",
    "ObjectTerm",
    "Query",
    "QueryError",
    "Relation",
    "RelationTerm",
    "Scene",
    "SceneDescription",
    "SceneFacts",
    "SceneObject",
    "captions_for",
    "description_facts",
    "description_matches",
    "description_of",
    "eval_queries",
    "group_relations",
    "item_seed",
    "iter_scenes",
    "parse_caption",
    "parse_description",
    "parse_query",
    "read_manifest",
    "relations_between",
    "render_scene",
    "sample_scene",
    "scene_facts",
    "scene_for_seed",
    "scenes",
    "vocabulary",
    "write_caption",
    "write_library",
]
