"""Live sessions in the encoder: the paced timeline, idle loops, hand-written fMP4 fragments."""
