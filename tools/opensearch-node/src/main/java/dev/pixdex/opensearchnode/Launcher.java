package dev.pixdex.opensearchnode;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.core.common.transport.TransportAddress;
import org.opensearch.env.Environment;
import org.opensearch.http.HttpServerTransport;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

/**
 * One OpenSearch node on 127.0.0.1, from the official artifacts: core, the transport-netty4, lang-painless
 * and analysis-common modules and the k-NN plugin, all loaded from the classpath (the k-NN zip carries no
 * faiss/nmslib native libraries, so its Lucene engine is the one that works here).
 *
 * <p>Usage: {@code Launcher --data DIR [--port N] [--cluster NAME] [--stdin-lifeline]}. Port 0 picks a free
 * port. When the node is ready it prints {@code PIXDEX_OPENSEARCH_URL http://127.0.0.1:PORT} on stdout;
 * with {@code --stdin-lifeline} it shuts down when stdin closes, so it never outlives the process that
 * started it (tests, {@code pixdex up}).
 */
public final class Launcher {

    private static final String READY = "PIXDEX_OPENSEARCH_URL ";

    /** Node exposes the classpath-plugin constructor only to subclasses. */
    static final class ClasspathNode extends Node {
        ClasspathNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    private Launcher() {}

    public static void main(String[] args) throws Exception {
        Path data = null;
        int port = 9200;
        String cluster = "pixdex-local";
        boolean lifeline = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--data" -> data = Path.of(args[++i]).toAbsolutePath();
                case "--port" -> port = Integer.parseInt(args[++i]);
                case "--cluster" -> cluster = args[++i];
                case "--stdin-lifeline" -> lifeline = true;
                default -> usage("unknown argument " + args[i]);
            }
        }
        if (data == null) {
            usage("--data DIR is required");
        }
        Path home = data.resolve("home");
        for (String dir : List.of("home/config", "home/plugins", "home/modules", "data", "logs")) {
            Files.createDirectories(data.resolve(dir));
        }
        Settings settings = Settings.builder()
            .put("cluster.name", cluster)
            .put("node.name", "pixdex-node")
            .put("path.home", home.toString())
            .put("path.data", data.resolve("data").toString())
            .put("path.logs", data.resolve("logs").toString())
            .put("network.host", "127.0.0.1")
            .put("http.port", port == 0 ? "0" : Integer.toString(port))
            // Transport is only the node talking to itself: any free port.
            .put("transport.port", "0")
            .put("discovery.type", "single-node")
            // Small disks on development machines must not turn indexes read-only.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.destructive_requires_name", false)
            .build();
        LogConfigurator.configureWithoutConfig(settings);
        Environment environment = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), null, () -> "pixdex-node");

        Node node = new ClasspathNode(environment, plugins());
        CountDownLatch stopped = new CountDownLatch(1);
        Thread stopper = new Thread(() -> {
            try {
                node.close();
                node.awaitClose(20, TimeUnit.SECONDS);
            } catch (IOException | InterruptedException e) {
                System.err.println("pixdex-opensearch: close failed: " + e);
            } finally {
                stopped.countDown();
            }
        }, "pixdex-node-stop");
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            if (stopped.getCount() > 0 && !stopper.isAlive()) {
                stopper.start();
            }
            try {
                stopped.await(25, TimeUnit.SECONDS);
            } catch (InterruptedException ignored) {
                Thread.currentThread().interrupt();
            }
        }, "pixdex-node-hook"));

        node.start();
        TransportAddress bound = node.injector().getInstance(HttpServerTransport.class).boundAddress().publishAddress();
        System.out.println(READY + "http://127.0.0.1:" + bound.getPort());
        System.out.flush();

        if (lifeline) {
            InputStream in = System.in;
            while (in.read() != -1) {
                // Anything written is ignored; only the end of stdin matters.
            }
            System.exit(0);
        }
        stopped.await();
    }

    private static Collection<Class<? extends Plugin>> plugins() throws ClassNotFoundException {
        List<Class<? extends Plugin>> plugins = new ArrayList<>();
        for (String name : List.of(
            "org.opensearch.transport.Netty4Plugin",
            "org.opensearch.painless.PainlessPlugin",
            "org.opensearch.analysis.common.CommonAnalysisPlugin",
            "org.opensearch.knn.plugin.KNNPlugin"
        )) {
            plugins.add(Class.forName(name).asSubclass(Plugin.class));
        }
        return plugins;
    }

    private static void usage(String problem) {
        System.err.println("pixdex-opensearch: " + problem);
        System.err.println("usage: Launcher --data DIR [--port N] [--cluster NAME] [--stdin-lifeline]");
        System.exit(2);
    }
}
