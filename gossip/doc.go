// Package gossip is rbee's membership plane: who is in the cluster, who is
// alive, and who is queen.
//
// It wraps hashicorp/memberlist (SWIM with Lifeguard) with encrypted gossip,
// node metadata (Meta: roles, HTTP address, start time, queen priority,
// version, queen claim) and a queen watcher. The election itself is Elect, a
// pure function of the member list that every node computes the same way, so
// no extra consensus round is needed: once the views converge, the queens
// agree.
//
// Members find each other through seeds (a node's --join, the snapshot of
// the members it knew) and, with a Discovery, on the LAN: MDNS announces the
// node by multicast DNS under an id derived from the cluster key (ClusterID)
// and joins the members of that id it hears, for as long as the node runs.
//
// The package never opens HTTP connections or touches the scheduler; callers
// learn about the queen through Gossip.WatchQueen.
package gossip
