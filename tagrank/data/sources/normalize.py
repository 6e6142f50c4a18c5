"""Tag normalisation and the synonym tables the converters use (documented here, in one place).

* :func:`normalize_tag` is the only change made to free tags (PASCAL tag files): lower case, trimmed,
  inner whitespace collapsed. Nothing else: Hwang & Grauman's vocabulary holds words such as
  ``glasses``, ``stairs`` and both ``calender`` and ``calendar``, and each must stay as it is.
* LabelMe object names are free text typed by many people: :func:`labelme_name` also drops view and
  occlusion qualifiers (``car occluded``, ``person crop``, ``window part``) and maps plurals and variants
  with :data:`LABELME_SYNONYMS` (``trees`` -> ``tree``, ``people`` -> ``person``...).
* COCO captions mention categories in words: :data:`COCO_SYNONYMS` lists, for each of the 80 categories,
  the phrases that name it (``man``, ``woman``, ``people`` -> person; ``bike`` -> bicycle; ``tv``,
  ``television`` -> tv...); :func:`coco_phrases` adds every phrase's plural.
"""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


def normalize_tag(tag: str) -> str:
    """Lower case, trimmed, runs of whitespace as one space."""
    return _SPACES.sub(" ", tag.strip().lower())


_IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice",
              "knife": "knives", "leaf": "leaves", "shelf": "shelves", "foot": "feet", "tooth": "teeth",
              "sheep": "sheep", "fish": "fish", "deer": "deer", "skis": "skis", "scissors": "scissors",
              "glasses": "glasses", "cattle": "cattle", "goose": "geese", "calf": "calves", "wolf": "wolves",
              "policeman": "policemen", "fireman": "firemen", "gentleman": "gentlemen", "bus": "buses"}


def plural(phrase: str) -> str:
    """English plural of a phrase's last word (``hot dog`` -> ``hot dogs``, ``bench`` -> ``benches``)."""
    head, _, last = phrase.rpartition(" ")
    if last in _IRREGULAR:
        word = _IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        word = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


# --- LabelMe ---------------------------------------------------------------------------------------

# Trailing words that describe the view or the visibility of an object, not what it is.
LABELME_QUALIFIERS = {"occluded", "occlusion", "crop", "cropped", "part", "partial", "truncated", "whole",
                      "side", "back", "front", "rear", "frontal", "view", "region"}

# Singular forms whose plural (see :func:`plural`) is mapped back to them.
_LABELME_SINGULAR = [
    "person", "man", "woman", "child", "tree", "window", "car", "building", "plant", "flower", "mountain",
    "rock", "cloud", "chair", "bush", "sign", "pole", "wheel", "door", "boat", "road", "bottle", "book",
    "cup", "plate", "lamp", "light", "streetlight", "table", "box", "bird", "cow", "sheep", "dog", "cat",
    "horse", "leaf", "shelf", "cabinet", "painting", "picture", "stone", "wall", "column", "balcony",
    "awning", "headlight", "taillight", "fence", "bench", "motorbike", "bicycle", "truck", "bus", "van",
    "curtain", "pillow", "cushion", "drawer", "field", "hill", "branch", "step", "stair",
]

# Variants of one thing, to the name kept (documented; extend it here, tests pin the behaviour).
LABELME_VARIANTS = {
    "people": "person", "persons": "person", "pedestrian": "person", "pedestrians": "person",
    "man": "person", "woman": "person", "child": "person", "men": "person", "women": "person",
    "children": "person", "boy": "person", "girl": "person", "kid": "person", "human": "person",
    "automobile": "car", "sedan": "car", "taxi": "car",
    "side walk": "sidewalk", "street light": "streetlight", "street lamp": "streetlight",
    "lamp post": "streetlight", "lamppost": "streetlight",
    "trash can": "trash", "trashcan": "trash", "garbage can": "trash",
    "tv": "television", "tv monitor": "television", "tvmonitor": "television",
    "bike": "bicycle", "motorcycle": "motorbike", "aeroplane": "airplane", "plane": "airplane",
    "sofa": "couch", "plant pot": "pottedplant", "potted plant": "pottedplant", "flowerpot": "pottedplant",
    "stairs": "stair", "staircase": "stair", "steps": "step", "leaves": "leaf",
}

LABELME_SYNONYMS: dict[str, str] = {plural(w): w for w in _LABELME_SINGULAR if plural(w) != w}
# A variant's plural means what the variant means ("boys", "bikes", "street lights").
LABELME_SYNONYMS.update({plural(k): v for k, v in LABELME_VARIANTS.items() if plural(k) not in LABELME_VARIANTS})
LABELME_SYNONYMS.update(LABELME_VARIANTS)


def labelme_name(name: str) -> str:
    """A LabelMe object name as a tag: normalised, view/occlusion words dropped, synonyms mapped."""
    words = normalize_tag(name.replace("_", " ").replace("-", " ")).split(" ")
    while len(words) > 1 and words[-1] in LABELME_QUALIFIERS:
        words.pop()
    tag = " ".join(w for w in words if w)
    return LABELME_SYNONYMS.get(tag, tag)


# --- COCO ------------------------------------------------------------------------------------------

# Words and phrases in captions that name each category (the category's own name is always included;
# so is every phrase's plural). Ambiguous words are left out on purpose: "glass", "board", "baby" (a
# baby elephant); "table" is kept, as COCO's dining table is what captions call a table.
COCO_SYNONYMS: dict[str, list[str]] = {
    "person": ["people", "man", "woman", "boy", "girl", "child", "kid", "guy", "lady", "adult",
               "player", "skier", "surfer", "skateboarder", "snowboarder", "rider", "batter", "catcher",
               "teenager", "gentleman", "policeman", "someone", "toddler", "crowd", "men", "women", "children"],
    "bicycle": ["bike", "cycle"],
    "car": ["auto", "automobile", "taxi", "cab", "sedan", "suv"],
    "motorcycle": ["motorbike", "motor bike", "scooter", "moped", "dirt bike", "motor cycle"],
    "airplane": ["plane", "aeroplane", "jet", "airliner", "aircraft", "jetliner", "air plane"],
    "bus": ["busses"],
    "train": ["locomotive"],
    "truck": ["pickup truck", "lorry"],
    "boat": ["ship", "sailboat", "kayak", "canoe", "yacht", "ferry"],
    "traffic light": ["stop light", "stoplight", "traffic signal"],
    "fire hydrant": ["hydrant"],
    "stop sign": [],
    "parking meter": ["meter"],
    "bench": [],
    "bird": ["pigeon", "seagull", "gull", "duck", "goose", "parrot", "swan"],
    "cat": ["kitten", "kitty"],
    "dog": ["puppy", "pup"],
    "horse": ["pony"],
    "sheep": ["lamb"],
    "cow": ["cattle", "bull", "calf", "oxen"],
    "elephant": [],
    "bear": [],
    "zebra": [],
    "giraffe": [],
    "backpack": ["back pack"],
    "umbrella": ["parasol"],
    "handbag": ["purse", "hand bag"],
    "tie": ["necktie"],
    "suitcase": ["luggage"],
    "frisbee": [],
    "skis": ["ski"],
    "snowboard": ["snow board"],
    "sports ball": ["ball", "soccer ball", "football", "tennis ball", "basketball"],
    "kite": [],
    "baseball bat": ["bat"],
    "baseball glove": ["glove", "mitt"],
    "skateboard": ["skate board"],
    "surfboard": ["surf board"],
    "tennis racket": ["racket", "racquet", "tennis racquet"],
    "bottle": [],
    "wine glass": [],
    "cup": ["mug", "coffee cup"],
    "fork": [],
    "knife": [],
    "spoon": [],
    "bowl": [],
    "banana": [],
    "apple": [],
    "sandwich": ["sub"],
    "orange": [],
    "broccoli": [],
    "carrot": [],
    "hot dog": ["hotdog"],
    "pizza": [],
    "donut": ["doughnut"],
    "cake": ["cupcake"],
    "chair": [],
    "couch": ["sofa"],
    "potted plant": ["plant", "houseplant", "pot plant"],
    "bed": [],
    "dining table": ["table"],
    "toilet": [],
    "tv": ["television", "tv set", "monitor", "computer monitor"],
    "laptop": ["computer", "notebook"],
    "mouse": [],
    "remote": ["remote control", "controller"],
    "keyboard": [],
    "cell phone": ["phone", "cellphone", "smartphone", "mobile phone"],
    "microwave": [],
    "oven": ["stove"],
    "toaster": [],
    "sink": [],
    "refrigerator": ["fridge"],
    "book": [],
    "clock": [],
    "vase": [],
    "scissors": ["scissor"],
    "teddy bear": ["teddy", "stuffed bear"],
    "hair drier": ["hair dryer", "hairdryer", "blow dryer"],
    "toothbrush": ["tooth brush"],
}


def coco_phrases(categories: list[str]) -> dict[tuple[str, ...], str]:
    """Word sequences that name each category: its name, its synonyms, and all their plurals."""
    table: dict[tuple[str, ...], str] = {}
    for name in categories:
        for phrase in [name, *COCO_SYNONYMS.get(name, [])]:
            for form in (phrase, plural(phrase)):
                table.setdefault(tuple(form.split()), name)
    return table
