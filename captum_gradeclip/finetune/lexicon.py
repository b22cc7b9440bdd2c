"""The small English lexicon of the phrase miner (:mod:`.phrases`): adjectives and nouns common in
image captions (COCO's 80 object classes, people, animals, places and parts of scenes, ShapesCLIP's
colours and shapes). Written by hand for this package; a caller can pass its own
(:class:`~.phrases.Lexicon`). Nouns are singular; :func:`~.phrases.plural` adds the plurals.
"""

from __future__ import annotations

COLOURS = """red orange yellow green blue purple pink brown black white gray grey silver gold golden
cyan magenta beige tan violet maroon navy turquoise""".split()

ADJECTIVES = frozenset(COLOURS + """small large big little tiny huge giant tall short long wide narrow
thick thin fat skinny old young new modern ancient antique baby adult elderly
dark light bright pale colorful colourful multicolored striped spotted plaid checkered patterned
wooden metal metallic plastic glass stone brick concrete leather paper ceramic steel iron
round square rectangular triangular curved straight flat empty full open closed broken dirty clean
wet dry hot cold warm fresh frozen cooked raw sliced chopped fried grilled baked
shiny fluffy furry hairy smooth rough soft hard heavy busy crowded quiet sunny cloudy snowy rainy
grassy sandy rocky muddy leafy tropical wild stuffed electric electronic digital vintage
happy smiling sad cute pretty beautiful ugly nice fancy plain simple male female double single
tiled paved parked""".split())

NOUNS = frozenset("""person man woman boy girl child kid baby guy lady player skier surfer
skateboarder rider crowd family couple group team
bicycle bike car motorcycle airplane plane jet bus train truck boat ship van taxi cart bench
bird cat dog horse sheep cow elephant bear zebra giraffe animal duck pigeon puppy kitten calf
backpack umbrella handbag bag tie suitcase frisbee ski snowboard kite skateboard surfboard
ball bat glove racket bottle cup fork knife spoon bowl mug plate glass
banana apple sandwich orange broccoli carrot pizza donut doughnut cake food meal salad
chair couch sofa plant bed table toilet tv television laptop
mouse remote keyboard phone microwave oven toaster sink refrigerator fridge
book clock vase scissors toothbrush
street road sidewalk building house city field grass tree sky water beach ocean sea lake river
mountain hill snow park room kitchen bathroom bedroom window door wall floor ceiling desk shelf
fence sign pole light lamp box basket counter track station airport runway court shirt hat
jacket helmet dress coat shoe flower rock sand wave cloud bridge tower
circle square triangle cross ring bar shape object""".split())

#: Nouns of two words (matched before single words).
COMPOUNDS = frozenset("""traffic light|fire hydrant|stop sign|parking meter|sports ball|baseball bat
baseball glove|tennis racket|wine glass|hot dog|potted plant|dining table|cell phone|teddy bear
hair drier|tennis court|bus stop|ice cream|living room|street sign""".replace("\n", "|").split("|"))

#: Irregular plurals (singular -> plural).
IRREGULAR = {"man": "men", "woman": "women", "person": "people", "child": "children", "mouse": "mice",
             "sheep": "sheep", "knife": "knives", "shelf": "shelves", "calf": "calves", "scissors": "scissors",
             "fish": "fish", "goose": "geese", "foot": "feet", "tooth": "teeth"}
