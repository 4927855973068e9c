// e- (100 GeV) on a nucleon at rest: quasi-real photoproduction (Q^2 < 2 GeV^2) with W > 9.6 GeV, i.e. an energy
// transfer nu > ~49 GeV, with Pythia 8.318 (soft QCD, resolved and direct photons, the lepton's photon flux).
// Usage: gen N_EVENTS SEED NUCLEON_PDG XMLDIR > events.txt
// Output: one line per final-state particle "event pdg E px py pz charge" (GeV, lab frame, beam along +z), and a
// last line "# sigmaGen_mb S nAccepted A nTried T" with Pythia's cross-section estimate per nucleon.
#include "Pythia8/Pythia.h"
#include <cstdio>
#include <cstdlib>
using namespace Pythia8;
int main(int argc, char** argv) {
  if (argc != 5) { fprintf(stderr, "usage: gen N_EVENTS SEED NUCLEON_PDG XMLDIR\n"); return 2; }
  int n = atoi(argv[1]); int seed = atoi(argv[2]); int idB = atoi(argv[3]);
  // The pythia8mc sources look for the xmldoc beside their Python module; PYTHIA8DATA takes precedence.
  setenv("PYTHIA8DATA", argv[4], 1);
  Pythia p(argv[4], false);
  p.readString("Beams:frameType = 3"); p.readString("Beams:idA = 11");
  p.readString("Beams:idB = " + std::to_string(idB));
  p.readString("Beams:pzA = 100."); p.readString("Beams:pzB = 0.");
  p.readString("PDF:lepton2gamma = on"); p.readString("Photon:ProcessType = 0");
  p.readString("Photon:Q2max = 2.0"); p.readString("Photon:Wmin = 9.6");
  p.readString("SoftQCD:all = on");
  p.readString("Random:setSeed = on"); p.readString("Random:seed = " + std::to_string(seed));
  p.readString("Next:numberCount = 0");
  if (!p.init()) return 1;
  for (int i = 0; i < n; ++i) {
    if (!p.next()) continue;
    for (int j = 0; j < p.event.size(); ++j) {
      const Particle& q = p.event[j];
      if (!q.isFinal()) continue;
      printf("%d %d %.6g %.6g %.6g %.6g %.3g\n", i, q.id(), q.e(), q.px(), q.py(), q.pz(), q.charge());
    }
  }
  printf("# sigmaGen_mb %.6g nAccepted %ld nTried %ld\n", p.info.sigmaGen(), p.info.nAccepted(), p.info.nTried());
  p.stat();
  return 0;
}
