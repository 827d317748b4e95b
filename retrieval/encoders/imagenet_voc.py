"""Which ImageNet-1k classes stand for each PASCAL-VOC label, so the offline CAM segmenter names its
masks the way the standard segmenter (DeepLabV3, 21 VOC classes) does.

Indices are ImageNet-1k class indices (timm / torchvision order). The grouping is hand-made from the
class names; ImageNet has no "person" class as such, so person maps to the three classes that are
pictures of people (ballplayer, groom, scuba diver).
"""

from __future__ import annotations

# VOC label -> its index in the 21-class VOC list (0 is background, never emitted).
VOC_INDEX: dict[str, int] = {
    "aeroplane": 1, "bicycle": 2, "bird": 3, "boat": 4, "bottle": 5, "bus": 6, "car": 7, "cat": 8,
    "chair": 9, "cow": 10, "diningtable": 11, "dog": 12, "horse": 13, "motorbike": 14, "person": 15,
    "pottedplant": 16, "sheep": 17, "sofa": 18, "train": 19, "tvmonitor": 20,
}

VOC_IMAGENET_CLASSES: dict[str, tuple[int, ...]] = {
    "aeroplane": (404, 895, 908),  # airliner, warplane, wing
    "bicycle": (444, 671),  # tandem, mountain bike
    # cock .. great grey owl, black grouse .. black swan, white stork .. albatross
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
    "boat": (403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914),
    "bottle": (440, 720, 737, 898, 907),  # beer, pill, pop, water, wine bottle
    "bus": (654, 779, 874),  # minibus, school bus, trolleybus
    "car": (407, 436, 468, 511, 609, 627, 656, 661, 717, 734, 751, 817),
    "cat": tuple(range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "chair": (423, 559, 765, 857),  # barber chair, folding chair, rocking chair, throne
    "cow": (345, 346, 347),  # ox, water buffalo, bison
    "diningtable": (532,),
    "dog": tuple(range(151, 269)),  # Chihuahua .. Mexican hairless
    "horse": (339, 603),  # sorrel, horse cart
    "motorbike": (665, 670),  # moped, motor scooter
    "person": (981, 982, 983),  # ballplayer, groom, scuba diver
    "pottedplant": (738,),  # pot, flowerpot
    "sheep": (348, 349),  # ram, bighorn
    "sofa": (831,),  # studio couch
    # bullet train, electric locomotive, freight car, passenger car, steam locomotive, streetcar
    "train": (466, 547, 565, 705, 820, 829),
    "tvmonitor": (527, 664, 782, 851),  # desktop computer, monitor, screen, television
}

# ImageNet index -> VOC label, for the classes above.
IMAGENET_TO_VOC: dict[int, str] = {
    imagenet_index: label for label, indices in VOC_IMAGENET_CLASSES.items() for imagenet_index in indices
}
