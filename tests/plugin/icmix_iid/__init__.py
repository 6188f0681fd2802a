"""A plugin of icmix, outside its source tree: i.i.d. token sequences whose token distribution is
drawn per sequence from a Dirichlet prior (``family``), and a figure with its claim (``figure``)."""
