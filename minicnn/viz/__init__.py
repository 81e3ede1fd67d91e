"""Pictures: training curves and confusion matrices (``plots``), and what a network computes
(``network``: filters, feature maps, the im2col window). matplotlib is imported only when a
picture is drawn."""
