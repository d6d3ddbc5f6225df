// Kubernetes' own component, built from its sources at the version go.mod pins (scripts/build-control-plane.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
