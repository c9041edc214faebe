"""The 147 CSS3 named colours, spelled the way Fill50k prompts spell them.

The original ControlNet Fill50k prompts name colours in lower-case words,
e.g. "pale golden rod circle with old lace background". Those words are the
W3Schools CamelCase colour names ("PaleGoldenRod", "OldLace") split at their
capitals, so that is the rule used for ``NamedColour.words`` here. Joining the
words gives the CSS name back ("pale golden rod" -> "palegoldenrod").

The table is written out in full rather than derived from
``PIL.ImageColor.colormap`` at import time: the word split cannot be derived,
and Pillow's map also holds the CSS4 ``rebeccapurple``. The tests check every
entry against ``PIL.ImageColor.getrgb``.

CSS keeps both "gray" and "grey" spellings (and the RGB twins aqua/cyan,
fuchsia/magenta); so does this table, because real prompts use both.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

__all__ = ["NamedColour", "COLOURS", "colour_by_words", "parse_fill50k_prompt"]


@dataclass(frozen=True)
class NamedColour:
    """One CSS3 named colour.

    Args:
        name: the CSS name, e.g. ``"palegoldenrod"``.
        words: the name as prompt words, e.g. ``"pale golden rod"``.
        rgb: the 8-bit sRGB value, e.g. ``(238, 232, 170)``.
    """

    name: str
    words: str
    rgb: tuple[int, int, int]


COLOURS: tuple[NamedColour, ...] = (
    NamedColour("aliceblue", "alice blue", (240, 248, 255)),
    NamedColour("antiquewhite", "antique white", (250, 235, 215)),
    NamedColour("aqua", "aqua", (0, 255, 255)),
    NamedColour("aquamarine", "aquamarine", (127, 255, 212)),
    NamedColour("azure", "azure", (240, 255, 255)),
    NamedColour("beige", "beige", (245, 245, 220)),
    NamedColour("bisque", "bisque", (255, 228, 196)),
    NamedColour("black", "black", (0, 0, 0)),
    NamedColour("blanchedalmond", "blanched almond", (255, 235, 205)),
    NamedColour("blue", "blue", (0, 0, 255)),
    NamedColour("blueviolet", "blue violet", (138, 43, 226)),
    NamedColour("brown", "brown", (165, 42, 42)),
    NamedColour("burlywood", "burly wood", (222, 184, 135)),
    NamedColour("cadetblue", "cadet blue", (95, 158, 160)),
    NamedColour("chartreuse", "chartreuse", (127, 255, 0)),
    NamedColour("chocolate", "chocolate", (210, 105, 30)),
    NamedColour("coral", "coral", (255, 127, 80)),
    NamedColour("cornflowerblue", "cornflower blue", (100, 149, 237)),
    NamedColour("cornsilk", "cornsilk", (255, 248, 220)),
    NamedColour("crimson", "crimson", (220, 20, 60)),
    NamedColour("cyan", "cyan", (0, 255, 255)),
    NamedColour("darkblue", "dark blue", (0, 0, 139)),
    NamedColour("darkcyan", "dark cyan", (0, 139, 139)),
    NamedColour("darkgoldenrod", "dark golden rod", (184, 134, 11)),
    NamedColour("darkgray", "dark gray", (169, 169, 169)),
    NamedColour("darkgreen", "dark green", (0, 100, 0)),
    NamedColour("darkgrey", "dark grey", (169, 169, 169)),
    NamedColour("darkkhaki", "dark khaki", (189, 183, 107)),
    NamedColour("darkmagenta", "dark magenta", (139, 0, 139)),
    NamedColour("darkolivegreen", "dark olive green", (85, 107, 47)),
    NamedColour("darkorange", "dark orange", (255, 140, 0)),
    NamedColour("darkorchid", "dark orchid", (153, 50, 204)),
    NamedColour("darkred", "dark red", (139, 0, 0)),
    NamedColour("darksalmon", "dark salmon", (233, 150, 122)),
    NamedColour("darkseagreen", "dark sea green", (143, 188, 143)),
    NamedColour("darkslateblue", "dark slate blue", (72, 61, 139)),
    NamedColour("darkslategray", "dark slate gray", (47, 79, 79)),
    NamedColour("darkslategrey", "dark slate grey", (47, 79, 79)),
    NamedColour("darkturquoise", "dark turquoise", (0, 206, 209)),
    NamedColour("darkviolet", "dark violet", (148, 0, 211)),
    NamedColour("deeppink", "deep pink", (255, 20, 147)),
    NamedColour("deepskyblue", "deep sky blue", (0, 191, 255)),
    NamedColour("dimgray", "dim gray", (105, 105, 105)),
    NamedColour("dimgrey", "dim grey", (105, 105, 105)),
    NamedColour("dodgerblue", "dodger blue", (30, 144, 255)),
    NamedColour("firebrick", "fire brick", (178, 34, 34)),
    NamedColour("floralwhite", "floral white", (255, 250, 240)),
    NamedColour("forestgreen", "forest green", (34, 139, 34)),
    NamedColour("fuchsia", "fuchsia", (255, 0, 255)),
    NamedColour("gainsboro", "gainsboro", (220, 220, 220)),
    NamedColour("ghostwhite", "ghost white", (248, 248, 255)),
    NamedColour("gold", "gold", (255, 215, 0)),
    NamedColour("goldenrod", "golden rod", (218, 165, 32)),
    NamedColour("gray", "gray", (128, 128, 128)),
    NamedColour("green", "green", (0, 128, 0)),
    NamedColour("greenyellow", "green yellow", (173, 255, 47)),
    NamedColour("grey", "grey", (128, 128, 128)),
    NamedColour("honeydew", "honey dew", (240, 255, 240)),
    NamedColour("hotpink", "hot pink", (255, 105, 180)),
    NamedColour("indianred", "indian red", (205, 92, 92)),
    NamedColour("indigo", "indigo", (75, 0, 130)),
    NamedColour("ivory", "ivory", (255, 255, 240)),
    NamedColour("khaki", "khaki", (240, 230, 140)),
    NamedColour("lavender", "lavender", (230, 230, 250)),
    NamedColour("lavenderblush", "lavender blush", (255, 240, 245)),
    NamedColour("lawngreen", "lawn green", (124, 252, 0)),
    NamedColour("lemonchiffon", "lemon chiffon", (255, 250, 205)),
    NamedColour("lightblue", "light blue", (173, 216, 230)),
    NamedColour("lightcoral", "light coral", (240, 128, 128)),
    NamedColour("lightcyan", "light cyan", (224, 255, 255)),
    NamedColour("lightgoldenrodyellow", "light golden rod yellow", (250, 250, 210)),
    NamedColour("lightgray", "light gray", (211, 211, 211)),
    NamedColour("lightgreen", "light green", (144, 238, 144)),
    NamedColour("lightgrey", "light grey", (211, 211, 211)),
    NamedColour("lightpink", "light pink", (255, 182, 193)),
    NamedColour("lightsalmon", "light salmon", (255, 160, 122)),
    NamedColour("lightseagreen", "light sea green", (32, 178, 170)),
    NamedColour("lightskyblue", "light sky blue", (135, 206, 250)),
    NamedColour("lightslategray", "light slate gray", (119, 136, 153)),
    NamedColour("lightslategrey", "light slate grey", (119, 136, 153)),
    NamedColour("lightsteelblue", "light steel blue", (176, 196, 222)),
    NamedColour("lightyellow", "light yellow", (255, 255, 224)),
    NamedColour("lime", "lime", (0, 255, 0)),
    NamedColour("limegreen", "lime green", (50, 205, 50)),
    NamedColour("linen", "linen", (250, 240, 230)),
    NamedColour("magenta", "magenta", (255, 0, 255)),
    NamedColour("maroon", "maroon", (128, 0, 0)),
    NamedColour("mediumaquamarine", "medium aqua marine", (102, 205, 170)),
    NamedColour("mediumblue", "medium blue", (0, 0, 205)),
    NamedColour("mediumorchid", "medium orchid", (186, 85, 211)),
    NamedColour("mediumpurple", "medium purple", (147, 112, 219)),
    NamedColour("mediumseagreen", "medium sea green", (60, 179, 113)),
    NamedColour("mediumslateblue", "medium slate blue", (123, 104, 238)),
    NamedColour("mediumspringgreen", "medium spring green", (0, 250, 154)),
    NamedColour("mediumturquoise", "medium turquoise", (72, 209, 204)),
    NamedColour("mediumvioletred", "medium violet red", (199, 21, 133)),
    NamedColour("midnightblue", "midnight blue", (25, 25, 112)),
    NamedColour("mintcream", "mint cream", (245, 255, 250)),
    NamedColour("mistyrose", "misty rose", (255, 228, 225)),
    NamedColour("moccasin", "moccasin", (255, 228, 181)),
    NamedColour("navajowhite", "navajo white", (255, 222, 173)),
    NamedColour("navy", "navy", (0, 0, 128)),
    NamedColour("oldlace", "old lace", (253, 245, 230)),
    NamedColour("olive", "olive", (128, 128, 0)),
    NamedColour("olivedrab", "olive drab", (107, 142, 35)),
    NamedColour("orange", "orange", (255, 165, 0)),
    NamedColour("orangered", "orange red", (255, 69, 0)),
    NamedColour("orchid", "orchid", (218, 112, 214)),
    NamedColour("palegoldenrod", "pale golden rod", (238, 232, 170)),
    NamedColour("palegreen", "pale green", (152, 251, 152)),
    NamedColour("paleturquoise", "pale turquoise", (175, 238, 238)),
    NamedColour("palevioletred", "pale violet red", (219, 112, 147)),
    NamedColour("papayawhip", "papaya whip", (255, 239, 213)),
    NamedColour("peachpuff", "peach puff", (255, 218, 185)),
    NamedColour("peru", "peru", (205, 133, 63)),
    NamedColour("pink", "pink", (255, 192, 203)),
    NamedColour("plum", "plum", (221, 160, 221)),
    NamedColour("powderblue", "powder blue", (176, 224, 230)),
    NamedColour("purple", "purple", (128, 0, 128)),
    NamedColour("red", "red", (255, 0, 0)),
    NamedColour("rosybrown", "rosy brown", (188, 143, 143)),
    NamedColour("royalblue", "royal blue", (65, 105, 225)),
    NamedColour("saddlebrown", "saddle brown", (139, 69, 19)),
    NamedColour("salmon", "salmon", (250, 128, 114)),
    NamedColour("sandybrown", "sandy brown", (244, 164, 96)),
    NamedColour("seagreen", "sea green", (46, 139, 87)),
    NamedColour("seashell", "sea shell", (255, 245, 238)),
    NamedColour("sienna", "sienna", (160, 82, 45)),
    NamedColour("silver", "silver", (192, 192, 192)),
    NamedColour("skyblue", "sky blue", (135, 206, 235)),
    NamedColour("slateblue", "slate blue", (106, 90, 205)),
    NamedColour("slategray", "slate gray", (112, 128, 144)),
    NamedColour("slategrey", "slate grey", (112, 128, 144)),
    NamedColour("snow", "snow", (255, 250, 250)),
    NamedColour("springgreen", "spring green", (0, 255, 127)),
    NamedColour("steelblue", "steel blue", (70, 130, 180)),
    NamedColour("tan", "tan", (210, 180, 140)),
    NamedColour("teal", "teal", (0, 128, 128)),
    NamedColour("thistle", "thistle", (216, 191, 216)),
    NamedColour("tomato", "tomato", (255, 99, 71)),
    NamedColour("turquoise", "turquoise", (64, 224, 208)),
    NamedColour("violet", "violet", (238, 130, 238)),
    NamedColour("wheat", "wheat", (245, 222, 179)),
    NamedColour("white", "white", (255, 255, 255)),
    NamedColour("whitesmoke", "white smoke", (245, 245, 245)),
    NamedColour("yellow", "yellow", (255, 255, 0)),
    NamedColour("yellowgreen", "yellow green", (154, 205, 50)),
)

_BY_WORDS: dict[str, NamedColour] = {colour.words: colour for colour in COLOURS}

# Fill50k prompts read "{circle} circle with {background} background". No
# colour's words contain " circle with ", so splitting on it is unambiguous.
_SEPARATOR = " circle with "
_SUFFIX = " background"


def colour_by_words(words: str) -> NamedColour:
    """Return the colour whose prompt words are ``words`` (e.g. ``"old lace"``).

    Raises:
        ValueError: if no CSS3 colour has these words; the message suggests
            the closest known names.
    """
    colour = _BY_WORDS.get(words)
    if colour is not None:
        return colour
    close = difflib.get_close_matches(words, list(_BY_WORDS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown colour {words!r}: expected the words of a CSS3 colour name "
        f"in lower case, separated by single spaces (e.g. 'pale golden rod').{hint}"
    )


def parse_fill50k_prompt(prompt: str) -> tuple[NamedColour, NamedColour]:
    """Read the (circle, background) colours back from a Fill50k prompt.

    Args:
        prompt: a prompt of the form
            ``"{circle colour} circle with {background colour} background"``.

    Raises:
        ValueError: if the prompt does not have that form or names a colour
            that is not a CSS3 colour.
    """
    circle, separator, rest = prompt.partition(_SEPARATOR)
    if not separator or not rest.endswith(_SUFFIX) or not circle:
        raise ValueError(
            f"Cannot parse Fill50k prompt {prompt!r}: expected "
            f"'<colour> circle with <colour> background', "
            f"e.g. 'pale golden rod circle with old lace background'."
        )
    background = rest[: -len(_SUFFIX)]
    try:
        return colour_by_words(circle), colour_by_words(background)
    except ValueError as error:
        raise ValueError(f"Cannot parse Fill50k prompt {prompt!r}: {error}") from None
